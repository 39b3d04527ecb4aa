"""Board preflight: what the board can run, printed as one JSON line (Python 3.6+, standard library, numpy, acl).

    python3 preflight.py TARGET_FOLDER

Deploy runs this before sending anything (`python3 -c <this file's text> TARGET`): the Python version, whether
numpy and acl import (and whether acl is the emulator), the free space where the run folder goes (its nearest
existing parent), and the CANN version file when one is readable.
"""
import json
import os
import platform
import sys

CANN_HOMES = ["/usr/local/Ascend/ascend-toolkit/latest", "/home/HwHiAiUser/Ascend/ascend-toolkit/latest"]
CANN_VERSION_FILES = ["version.cfg", "ascend_toolkit_install.info", "aarch64-linux/ascend_toolkit_install.info",
                      "x86_64-linux/ascend_toolkit_install.info"]
DRIVER_VERSION_FILE = "/usr/local/Ascend/driver/version.info"


def module_report(report, name):
    try:
        module = __import__(name)
    except Exception as e:  # a broken install is a finding, not a crash
        report["%s_error" % name] = "%s: %s" % (type(e).__name__, e)
        return None
    return module


def free_space(report, target):
    folder = target
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder) or "/"
    st = os.statvfs(folder)
    report["free_bytes"] = st.f_bavail * st.f_frsize
    report["free_checked_at"] = folder


def cann_version():
    homes = [os.environ.get("ASCEND_TOOLKIT_HOME", "")] + CANN_HOMES
    files = [os.path.join(h, n) for h in homes if h for n in CANN_VERSION_FILES] + [DRIVER_VERSION_FILE]
    for path in files:
        try:
            with open(path) as f:
                lines = [line.strip() for line in f.read().splitlines() if "version" in line.lower()][:3]
        except (IOError, OSError):
            continue
        return {"file": path, "lines": lines}
    return None


def main(argv):
    report = {"python": platform.python_version(), "python_ok": sys.version_info >= (3, 6),
              "executable": sys.executable}
    numpy = module_report(report, "numpy")
    report["numpy"] = numpy.__version__ if numpy is not None else None
    acl = module_report(report, "acl")
    report["acl"] = acl is not None
    report["acl_sim"] = bool(getattr(acl, "__atlas_kd_sim__", False))
    if acl is not None:
        report["acl_path"] = getattr(acl, "__file__", None)
    free_space(report, argv[1])
    report["cann"] = cann_version()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
