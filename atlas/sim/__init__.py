"""Board-free rehearsal: the ATC stand-in, the pyACL emulator (package `acl` beside this file) and the sim board.

Keep module names here distinct from any stdlib or third-party name: the sim board puts this folder on the
board's PYTHONPATH so that `import acl` finds the emulator.
"""
