"""Read an `.om` file for `atlas-kd om --inspect`: real (ATC, magic `IMOD`) or simulated (atc-sim, `AKDSIMOM`).

Real files (spec/atc.md §8, from GE5 source and one real CANN 20.1 file): a 256-byte little-endian header, a
partition table (`u32 num`, then `num` x `{u32 type, u32 offset, u32 size}`), then the payloads, offsets counted
from the end of the table. The header's platform fields moved between 20.1 and 5.x; we read both and say which
one fits. The MODEL_DEF partition is a `ge.proto.ModelDef` protobuf: we walk its wire format for the model name
and the graph's inputs (Data ops) and outputs (NetOutput), with field numbers from netron's om-proto.js [COMM].
Damage (wrong magic or length, a partition past the end, an undecodable model definition) is reported, never
crashed on.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from atlas.errors import UserError
from atlas.run_folder import MODEL_OM
from atlas.protowire import WireError, fields, packed_ints
from atlas import om_container

HEADER_SIZE = 256
MIN_SIZE = 260  # the 5.x loader's minimum (§8)
REAL_MAGIC_U32 = 0x444F4D49  # bytes "IMOD"
PARTITION_TYPES = {0: "MODEL_DEF", 1: "WEIGHTS", 2: "TASK_INFO", 3: "TBE_KERNELS", 4: "CUST_AICPU"}
PARTITION_COUNTS = (1, 3, 4, 5)
PLATFORM_TYPES = {1: "MINI (Ascend 310)"}  # §8 names only this value
# ge.proto DataType (netron om-proto.js [COMM])
GE_DTYPES = {0: "undefined", 1: "float32", 2: "float16", 3: "int8", 4: "uint8", 5: "int16", 6: "uint16",
             7: "int32", 8: "int64", 9: "uint32", 10: "uint64", 11: "bool", 12: "float64"}


class OmDamaged(UserError):
    """The file is not a readable .om: one line saying what is wrong (exit 1)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None):
        super().__init__(message, exit_code=1)
        self.report = report


# --- the header -------------------------------------------------------------------------------------------

def _cstring(raw: bytes) -> str | None:
    """A NUL-terminated printable ASCII string, or None when the bytes are not one."""
    text = raw.split(b"\0", 1)[0]
    if not text or not all(32 <= b < 127 for b in text):
        return None
    return text.decode("ascii")


def _printable(raw: bytes) -> str:
    """Text from the file for a terminal: anything but printable ASCII (a random file's bytes) becomes '?'."""
    return "".join(chr(b) if 32 <= b < 127 else "?" for b in raw)


def read_header(data: bytes) -> dict[str, Any]:
    u32 = lambda off: struct.unpack_from("<I", data, off)[0]  # noqa: E731
    header = {
        "magic": data[:4].decode("ascii", "backslashreplace"),
        "magic_ok": u32(0) == REAL_MAGIC_U32,
        "headsize": u32(4),
        "version": f"0x{u32(8):08X}",
        "checksum_zero": not any(data[12:76]),
        "length": u32(76),
        "length_expected": len(data) - HEADER_SIZE,
        "is_encrypt": data[80],
        "is_checksum": data[81],
        "modeltype": data[82],
        "genmode": data[83],
        "name": _printable(data[84:116].split(b"\0", 1)[0]),
        "om_ir_version": u32(152),
    }
    # platform fields: 20.1 puts platform_version[20] at 156 and platform_type at 176; 5.x puts model_num (u32)
    # at 156, platform_version at 160, platform_type at 180 (§8). A layout fits when its version is a string.
    layouts = {
        "20.1": {"platform_version": _cstring(data[156:176]), "platform_type": data[176]},
        "5.x": {"model_num": u32(156), "platform_version": _cstring(data[160:180]), "platform_type": data[180]},
    }
    fits = [name for name, f in layouts.items() if f["platform_version"] is not None
            and (name != "5.x" or f["model_num"] < 1024)]
    header["layouts"] = {name: {**f, "platform_type_name": PLATFORM_TYPES.get(f["platform_type"], "unknown")}
                         for name, f in layouts.items()}
    header["layout"] = fits[0] if len(fits) == 1 else ("ambiguous" if fits else "unknown")
    return header


def read_partitions(data: bytes) -> tuple[list[dict[str, Any]], int, list[str]]:
    """The partition table: entries, where the payloads start, and the problems found (empty when it fits)."""
    problems: list[str] = []
    if len(data) < HEADER_SIZE + 4:
        return [], HEADER_SIZE, [f"no partition table (file is {len(data)} bytes)"]
    num = struct.unpack_from("<I", data, HEADER_SIZE)[0]
    table_end = HEADER_SIZE + 4 + 12 * num
    if num not in PARTITION_COUNTS:
        problems.append(f"partition count {num} is not one of {PARTITION_COUNTS}")
    if table_end > len(data):
        return [], table_end, problems + [f"the partition table ({num} entries) runs past the end of the file"]
    entries = []
    for i in range(num):
        ptype, offset, size = struct.unpack_from("<III", data, HEADER_SIZE + 4 + 12 * i)
        start = table_end + offset
        fits = start + size <= len(data)
        entries.append({"type": ptype, "type_name": PARTITION_TYPES.get(ptype, f"unknown({ptype})"),
                        "offset": offset, "file_offset": start, "size": size, "fits": fits})
        if ptype not in PARTITION_TYPES:
            problems.append(f"partition {i} has unknown type {ptype}")
        if not fits:
            problems.append(f"partition {i} ({entries[-1]['type_name']}) ends at byte {start + size}, past the end "
                            f"of the file ({len(data)} bytes)")
    return entries, table_end, problems


# --- the model definition (protobuf wire format) ----------------------------------------------------------

def _tensor_desc(data: bytes) -> dict[str, Any]:
    desc: dict[str, Any] = {"dims": []}
    for number, wire, value in fields(data):
        if number == 1 and wire == 2:
            desc["name"] = _printable(value)
        elif number == 2 and wire == 0:
            desc["dtype"] = GE_DTYPES.get(value, f"dtype {value}")
        elif number == 3 and wire == 2:
            for n, w, v in fields(value):
                if n == 1:
                    desc["dims"] += packed_ints(w, v)
        elif number == 4 and wire == 2:
            desc["format"] = _printable(value)
        elif number == 10 and wire == 0:
            desc["bytes"] = value
    return desc


def read_model_def(data: bytes) -> dict[str, Any]:
    """Model name, version strings, and the first graph's inputs (Data ops) and outputs (NetOutput inputs)."""
    model: dict[str, Any] = {"graphs": 0, "ops": 0, "inputs": [], "outputs": []}
    for number, wire, value in fields(data):
        if number == 1 and wire == 2:
            model["name"] = _printable(value)
        elif number == 2 and wire == 0:
            model["version"] = value
        elif number == 3 and wire == 2:
            model["custom_version"] = _printable(value)
        elif number == 7 and wire == 2:
            model["graphs"] += 1
            if model["graphs"] == 1:
                _read_graph(value, model)
    return model


def _read_graph(data: bytes, model: dict[str, Any]) -> None:
    for number, wire, value in fields(data):
        if number == 1 and wire == 2:
            model["graph_name"] = _printable(value)
        elif number == 6 and wire == 2:
            model["ops"] += 1
            op: dict[str, Any] = {"input_desc": [], "output_desc": []}
            for n, w, v in fields(value):
                if n == 1 and w == 2:
                    op["name"] = _printable(v)
                elif n == 2 and w == 2:
                    op["type"] = _printable(v)
                elif n == 33 and w == 2:
                    op["input_desc"].append(v)
                elif n == 34 and w == 2:
                    op["output_desc"].append(v)
            if op.get("type") == "Data":
                descs = op["output_desc"] or op["input_desc"]
                desc = _tensor_desc(descs[0]) if descs else {"dims": []}
                model["inputs"].append({"name": op.get("name", ""), **{k: v for k, v in desc.items() if k != "name"}})
            elif op.get("type") == "NetOutput":
                for raw in op["input_desc"]:
                    desc = _tensor_desc(raw)
                    model["outputs"].append({"name": op.get("name", ""), **{k: v for k, v in desc.items()
                                                                            if k != "name"}})


# --- inspect ----------------------------------------------------------------------------------------------

@dataclass
class Inspection:
    report: dict[str, Any]
    damaged: str | None  # one line saying what is wrong, or None


def inspect_bytes(data: bytes, name: str = MODEL_OM) -> Inspection:
    """What the bytes are and what can be read from them; never raises on bad bytes."""
    report: dict[str, Any] = {"path": name, "bytes": len(data)}
    if om_container.is_sim_om(data):
        report["kind"] = "sim"
        try:
            sim = om_container.unpack(data, name=name)
        except om_container.SimOmError as e:
            return Inspection(report, str(e))
        report["note"] = om_container.SIM_MESSAGE
        report["metadata"] = sim.meta
        report["payload_bytes"] = len(sim.onnx_bytes)
        return Inspection(report, None)
    report["kind"] = "real" if om_container.is_real_om(data) else "unknown"
    if len(data) < MIN_SIZE:
        return Inspection(report, f"{name}: damaged or not an .om: {len(data)} bytes, shorter than the "
                                  f"{MIN_SIZE}-byte minimum of a real .om")
    header = read_header(data)
    report["header"] = header
    if not header["magic_ok"]:
        looks_real = header["headsize"] == HEADER_SIZE and header["length"] == header["length_expected"]
        what = "damaged .om" if looks_real else "not an .om (or damaged)"
        return Inspection(report, f"{name}: {what}: magic bytes {data[:4]!r}, expected b'IMOD' (real) or "
                                  f"b'AKDSIMOM' (atc-sim)")
    problems = []
    if header["headsize"] != HEADER_SIZE:
        problems.append(f"header size {header['headsize']}, expected {HEADER_SIZE}")
    if header["length"] != header["length_expected"]:
        problems.append(f"the header says {header['length'] + HEADER_SIZE} bytes, the file has {len(data)} "
                        f"(truncated or padded)")
    partitions, table_end, partition_problems = read_partitions(data)
    report["partitions"] = partitions
    problems += partition_problems
    model_def = next((p for p in partitions if p["type"] == 0 and p["fits"]), None)
    if model_def is not None:
        try:
            report["model"] = read_model_def(data[model_def["file_offset"]:model_def["file_offset"] + model_def["size"]])
        except WireError as e:
            problems.append(f"the model definition (MODEL_DEF partition) does not decode: {e}")
    elif not partition_problems:
        problems.append("no MODEL_DEF partition")
    if problems:
        return Inspection(report, f"{name}: damaged .om: {problems[0]}"
                                  + (f" (+{len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    return Inspection(report, None)


def inspect_om(path: str | Path) -> Inspection:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an .om file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    return inspect_bytes(data, str(path))


def require_real_om(path: str | Path) -> dict[str, Any]:
    """For paths that need a real ATC .om (a real board): the inspection report, or a one-line UserError.

    A sim .om is refused with om_container.SIM_MESSAGE.
    """
    inspection = inspect_om(path)
    if inspection.report.get("kind") == "sim":
        raise UserError(f"{path}: {om_container.SIM_MESSAGE}; a real board cannot load it (rebuild with the real ATC: "
                        f"`atlas-kd om` without --sim)", exit_code=1)
    if inspection.damaged:
        raise OmDamaged(inspection.damaged, inspection.report)
    return inspection.report


# --- text -------------------------------------------------------------------------------------------------

def _tensor_line(t: dict[str, Any]) -> str:
    dims = ",".join(str(d) for d in t.get("dims", []))
    return f"{t.get('name', '?')}  {t.get('dtype', '?')} [{dims}] {t.get('format', '')}".rstrip()


def describe(inspection: Inspection) -> str:
    """The human-readable report `om --inspect` prints."""
    r = inspection.report
    lines = [f"{r['path']}: {r['bytes']:,} bytes"]
    if r.get("kind") == "sim":
        lines[0] += f", simulated .om built by atc-sim ({om_container.SIM_MESSAGE}; real tools and boards refuse it)"
        meta = r.get("metadata", {})
        if meta:
            lines.append(f"  model {meta.get('model_name')}  soc {meta.get('soc_version')}  precision "
                         f"{meta.get('precision_mode')}  fp16 numerics {meta.get('fp16')}")
            lines += [f"  input   {_tensor_line(t)}" for t in meta.get("inputs", [])]
            lines += [f"  output  {_tensor_line(t)}" for t in meta.get("outputs", [])]
            lines.append(f"  source  ONNX sha256 {str(meta.get('source_onnx_sha256'))[:16]}... (the build record beside "
                         "the .om, atc.json, names the file)")
            aipp = meta.get("aipp")
            lines.append(f"  AIPP    {_aipp_line(aipp)}")
            lines.append(f"  payload {r.get('payload_bytes', 0):,} bytes of ONNX prepared for float16 execution")
    elif "header" in r:
        h = r["header"]
        lines[0] += ", real ATC offline model" if r["kind"] == "real" else ", unknown format"
        lines.append(f"  header  magic {h['magic']!r}  headsize {h['headsize']}  version {h['version']}  "
                     f"name {h['name']!r}  om_ir_version {h['om_ir_version']}")
        lines.append(f"  length  {h['length']:,} (file size - 256 = {h['length_expected']:,}: "
                     f"{'ok' if h['length'] == h['length_expected'] else 'MISMATCH'})  encrypted {h['is_encrypt']}  "
                     f"checksum {h['is_checksum']}  modeltype {h['modeltype']}  genmode {h['genmode']}")
        for name, f in h["layouts"].items():
            mark = "  <- fits" if h["layout"] == name else ""
            extra = f"model_num {f['model_num']}  " if "model_num" in f else ""
            lines.append(f"  layout {name:4}: {extra}platform_version {f['platform_version']!r}  platform_type "
                         f"{f['platform_type']} ({f['platform_type_name']}){mark}")
        if h["layout"] in ("ambiguous", "unknown"):
            lines.append(f"  platform layout: {h['layout']} (neither or both of the 20.1 / 5.x layouts fit, spec §8)")
        for p in r.get("partitions", []):
            lines.append(f"  partition {p['type_name']:12} offset {p['offset']:>10,}  size {p['size']:>10,}"
                         f"{'' if p['fits'] else '  PAST THE END'}")
        model = r.get("model")
        if model:
            lines.append(f"  model def: name {model.get('name')!r}  custom_version {model.get('custom_version')!r}  "
                         f"{model['ops']} ops in graph {model.get('graph_name')!r}")
            lines += [f"  input   {_tensor_line(t)}" for t in model["inputs"]]
            lines += [f"  output  {_tensor_line(t)}" for t in model["outputs"]]
    if inspection.damaged:
        lines.append(f"  DAMAGED: {inspection.damaged}")
    return "\n".join(lines)


def _aipp_line(aipp: dict[str, Any] | None) -> str:
    if not aipp:
        return "none (the board feeds float32 NCHW, normalised)"
    channels = sorted(k for k in aipp if k.startswith("min_chn_"))
    values = ", ".join(f"ch{k[-1]}: (p - {aipp[k]:g}) * {aipp.get('var_reci_chn_' + k[-1], 1.0):g}" for k in channels)
    return f"{aipp.get('input_format')} {aipp.get('aipp_mode')}: {values}"
