"""A fault the sim board injects into one operator, so that a rehearsal of `atlas-kd locate` can fail:
`atlas-kd sim-board start --fault NODE:KIND[:VALUE]` (KIND scale, offset, nan or overflow; NODE an ONNX node name
of the model). The board's sshd gives its logins ATLAS_KD_SIM_FAULT; the emulator then rewrites that node's
output in the payload it runs, says so on the board's log (stderr) and marks the acl module, whose mark the
board app copies into timing.json. Nowhere else is anything corrupted: no other board gets the variable."""
from __future__ import annotations

import sys

ENV = "ATLAS_KD_SIM_FAULT"
KINDS = {"scale": 2.0, "offset": 1.0, "nan": None, "overflow": 1e6}  # the default VALUE of each kind


class FaultSpecError(ValueError):
    """A --fault that is not NODE:KIND[:VALUE]."""


def parse(spec: str) -> tuple[str, str, float | None]:
    """`NODE:KIND[:VALUE]` -> (node, kind, value); node names may themselves hold ':' (the last fields count)."""
    parts = spec.rsplit(":", 2)
    if len(parts) >= 2 and parts[-1] in KINDS:
        node, kind, value = ":".join(parts[:-1]), parts[-1], None
    elif len(parts) == 3 and parts[1] in KINDS:
        node, kind = parts[0], parts[1]
        try:
            value = float(parts[2])
        except ValueError:
            raise FaultSpecError(f"--fault {spec!r}: VALUE {parts[2]!r} is not a number") from None
    else:
        raise FaultSpecError(f"--fault {spec!r}: expected NODE:KIND[:VALUE], KIND one of {', '.join(KINDS)}")
    if not node:
        raise FaultSpecError(f"--fault {spec!r}: no node name")
    return node, kind, KINDS[kind] if value is None else value


def apply(onnx_bytes: bytes, spec: str, log=None) -> tuple[bytes, str | None]:
    """The payload with NODE's first output corrupted, and a line saying what was done (None: NODE is not in
    this model, nothing changed)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    node_name, kind, value = parse(spec)
    model = onnx.load_from_string(onnx_bytes)
    node = next((n for n in model.graph.node if n.name == node_name), None)
    say = log or (lambda line: sys.stderr.write(line + "\n"))
    if node is None:
        say(f"acl-sim: warning: fault {spec!r}: no node {node_name!r} in this model; nothing injected")
        return onnx_bytes, None
    tensor = node.output[0]
    raw = f"{tensor}__before_fault"
    node.output[0] = raw
    constant = f"{tensor}__fault_value"
    factor = {"scale": value, "overflow": value, "nan": float("nan")}.get(kind)
    op = "Add" if kind == "offset" else "Mul"
    model.graph.initializer.append(numpy_helper.from_array(np.array(value if kind == "offset" else factor,
                                                                    np.float32), constant))
    model.graph.node.insert(list(model.graph.node).index(node) + 1,
                            helper.make_node(op, [raw, constant], [tensor], name=f"{node_name}__fault"))
    note = f"acl-sim: FAULT injected by this sim board: node {node_name} ({node.op_type}) output {kind}" + \
           (f" {value:g}" if kind != "nan" else "")
    say(note)
    return model.SerializeToString(), note
