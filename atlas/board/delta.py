"""Model updates on the board: rebuild a model file from the copy the board holds and a delta, check it, commit
it beside the board's manifest (Python 3.6+, the standard library and numpy only).

    python3 delta.py probe  --dir RUN_DIR [--atc ATC]        what the board holds, as one JSON line
    python3 delta.py apply  --delta FILE --base FILE --out FILE
    python3 delta.py commit --dir RUN_DIR --stage DIR --info JSON

The host (atlas/delta.py) imports this module too: the delta format has one definition, here, and the host
computes a lossy reconstruction with the very code the board runs, so both get the same bytes.

A delta file (format version 1, docs/delta.md):
    0   8  magic b"AKDDELTA"
    8   1  format version (1)
    9   1  codec of what follows: 1 zlib, 2 lzma (xz)
    10  .. compressed: u32 header length H (little-endian), H bytes of header JSON, the body

Exit status: 0 done; 2 bad arguments, files or delta; 3 the base is not the one the delta was made against
(the host falls back to a full upload); 4 the rebuilt or committed file fails its sha256 check.
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import time
import zlib

import numpy as np

MAGIC = b"AKDDELTA"
VERSION = 1
CODECS = {1: "zlib", 2: "lzma"}
MANIFEST_FORMAT = "atlas-kd.board-manifest"
MANIFEST_VERSION = 1
# = REMOTE_MANIFEST, REMOTE_MODEL and REMOTE_ONNX in atlas/run_folder.py, copied because nothing of the project
# but this folder reaches the board
MANIFEST_NAME = "manifest.json"
MODEL_FILES = ("model.om", "model.onnx")
ONNX_NAME = "model.onnx"
# ONNX TensorProto.DataType -> bytes per element (the rest are taken byte by byte)
ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
FLOAT32 = 1
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_HEAD = struct.Struct("<8sBB")


class DeltaError(Exception):
    """A delta or a base that cannot be used; `code` is the tool's exit status."""

    def __init__(self, message, code=2):
        Exception.__init__(self, message)
        self.code = code


# --- the container --------------------------------------------------------------------------------------------

def available_codecs():
    """The codecs this Python has, best first (a Python built without liblzma has no lzma)."""
    try:
        import lzma  # noqa: F401
        return ["lzma", "zlib"]
    except ImportError:
        return ["zlib"]


def compress(data, codec):
    if codec == "lzma":
        import lzma
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)
    return zlib.compress(data, 9)


def decompress(data, codec):
    try:
        if codec == "lzma":
            import lzma
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
        return zlib.decompress(data)
    except ImportError:
        raise DeltaError("this Python cannot read %s (built without it)" % codec)
    except Exception as e:  # zlib.error, lzma.LZMAError: a damaged delta
        raise DeltaError("the delta does not decompress (%s: %s)" % (type(e).__name__, e))


def pack(header, body, codec):
    """A delta file: the header (a JSON-ready dict) and the body, compressed together."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    codec_id = [k for k, v in CODECS.items() if v == codec][0]
    return _HEAD.pack(MAGIC, VERSION, codec_id) + compress(struct.pack("<I", len(text)) + text + body, codec)


def unpack(data):
    """(header, body) of a delta file; DeltaError when it is not one this version reads."""
    if len(data) < _HEAD.size or data[:8] != MAGIC:
        raise DeltaError("not a delta file (no AKDDELTA magic)")
    _, version, codec_id = _HEAD.unpack_from(data)
    if version != VERSION:
        raise DeltaError("delta format version %d; this tool reads version %d (deploy again with this "
                         "atlas-kd, which ships its own tool)" % (version, VERSION))
    if codec_id not in CODECS:
        raise DeltaError("unknown codec %d in the delta" % codec_id)
    plain = decompress(data[_HEAD.size:], CODECS[codec_id])
    size = struct.unpack_from("<I", plain)[0] if len(plain) >= 4 else -1
    if size < 0 or 4 + size > len(plain):
        raise DeltaError("the delta's header is truncated")
    try:
        header = json.loads(plain[4:4 + size].decode("utf-8"))
    except ValueError as e:
        raise DeltaError("the delta's header is not JSON (%s)" % e)
    return header, plain[4 + size:]


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- where an ONNX file keeps its weights (the protobuf wire format, read by hand: no onnx on the board) --------

def _varint(data, pos):
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DeltaError("the ONNX file is damaged (a varint runs past its end)")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data, start, end):
    """(field number, wire type, a, b) of one message in data[start:end]: for a varint (value, position after),
    for the others the value's byte range [a, b)."""
    pos = start
    while pos < end:
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value, pos
            continue
        if wire == 2:
            length, pos = _varint(data, pos)
        elif wire in (1, 5):
            length = 8 if wire == 1 else 4
        else:
            raise DeltaError("the ONNX file uses wire type %d, which a model file never has" % wire)
        if pos + length > end:
            raise DeltaError("the ONNX file is damaged (a field runs past its message)")
        yield number, wire, pos, pos + length
        pos += length


class Tensor(object):
    """One initializer whose values are stored as raw bytes: its name, ONNX data type, dims and byte range."""

    __slots__ = ("name", "dtype", "dims", "offset", "length")

    def __init__(self, name, dtype, dims, offset, length):
        self.name, self.dtype, self.dims, self.offset, self.length = name, dtype, dims, offset, length

    @property
    def itemsize(self):
        return ITEMSIZE.get(self.dtype, 1)

    @property
    def channels(self):
        """The length of its first axis when it has two or more (what a "scaled" tensor has a scale for), else 1."""
        return self.dims[0] if len(self.dims) > 1 and self.dims[0] > 0 else 1

    def key(self):
        """What must stay the same for a tensor to be updated in place."""
        return (self.name, self.dtype, tuple(self.dims), self.length)


def _tensor(data, start, end):
    name, dtype, dims, raw, external = "", 0, [], None, False
    for number, wire, a, b in _fields(data, start, end):
        if number == 1:  # dims: packed or one varint a field
            if wire == 0:
                dims.append(a)
            else:
                pos = a
                while pos < b:
                    value, pos = _varint(data, pos)
                    dims.append(value)
        elif number == 2 and wire == 0:
            dtype = a
        elif number == 8 and wire == 2:
            name = data[a:b].decode("utf-8", "replace")
        elif number == 9 and wire == 2:
            raw = (a, b)
        elif number == 14 and wire == 0:
            external = a == 1
    if external:
        raise DeltaError("initializer %s keeps its data outside the ONNX file (external data)" % name)
    return None if raw is None else Tensor(name, dtype, dims, raw[0], raw[1] - raw[0])


def onnx_tensors(data):
    """The graph's initializers stored as raw bytes, in file order (others stay part of the structure)."""
    found = []
    for number, wire, a, b in _fields(data, 0, len(data)):
        if number != 7 or wire != 2:  # ModelProto.graph
            continue
        for g_number, g_wire, c, d in _fields(data, a, b):
            if g_number == 5 and g_wire == 2:  # GraphProto.initializer
                tensor = _tensor(data, c, d)
                if tensor is not None:
                    found.append(tensor)
    return found


def skeleton(data, tensors):
    """The file without its tensors' bytes, and where each tensor's bytes go back in (skeleton offsets)."""
    pieces, holes, pos, size = [], [], 0, 0
    for t in tensors:
        pieces.append(data[pos:t.offset])
        size += t.offset - pos
        holes.append(size)
        pos = t.offset + t.length
    pieces.append(data[pos:])
    return b"".join(pieces), holes


def join(frame, holes, payloads):
    """skeleton() undone: the structure with each tensor's bytes put back at its hole."""
    pieces, pos = [], 0
    for hole, payload in zip(holes, payloads):
        pieces.append(frame[pos:hole])
        pieces.append(payload)
        pos = hole
    pieces.append(frame[pos:])
    return b"".join(pieces)


# --- tensor codecs -----------------------------------------------------------------------------------------

def words(payload, itemsize):
    """A tensor's bytes as unsigned integers of its element size (little-endian, as ONNX stores them)."""
    if itemsize not in _UNSIGNED or len(payload) % itemsize:
        itemsize = 1
    return np.frombuffer(payload, dtype=np.dtype(_UNSIGNED[itemsize]).newbyteorder("<"))


def to_planes(values):
    """Byte planes, least significant first: equal high bytes (exponents, small numbers) end up side by side,
    which is what the compressor can use."""
    return np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<")).view(np.uint8)
                                .reshape(-1, values.dtype.itemsize).T).tobytes()


def from_planes(data, itemsize, count):
    if len(data) != itemsize * count:
        raise DeltaError("a tensor's delta has %d bytes, %d expected" % (len(data), itemsize * count))
    planes = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, count)
    return np.ascontiguousarray(planes.T).view(np.dtype(_UNSIGNED[itemsize]).newbyteorder("<")).ravel()


def zigzag(signed):
    """Signed integers -> unsigned of the same width, small magnitudes to small numbers (0, -1, 1 -> 0, 1, 2)."""
    bits = signed.dtype.itemsize * 8
    unsigned = np.dtype(_UNSIGNED[signed.dtype.itemsize])
    return ((signed << 1) ^ (signed >> (bits - 1))).view(unsigned)


def unzigzag(unsigned):
    signed = np.dtype("i%d" % unsigned.dtype.itemsize)
    one = unsigned.dtype.type(1)
    return ((unsigned >> one) ^ (np.zeros_like(unsigned) - (unsigned & one))).view(signed)


def undo_difference(base_payload, encoded, itemsize):
    """Exact: the new bit patterns are the base's plus the zig-zagged differences, modulo 2**bits."""
    base = words(base_payload, itemsize)
    diff = unzigzag(from_planes(encoded, base.dtype.itemsize, len(base))).view(base.dtype)
    return (base + diff).astype(base.dtype).tobytes()


def dequantize(base_payload, q, step):
    """Lossy: base + q * step in float32, the one formula the host and the board both compute."""
    base = np.frombuffer(base_payload, dtype="<f4")
    values = np.add(base, np.multiply(q.astype(np.float32), np.float32(step), dtype=np.float32), dtype=np.float32)
    return values.astype("<f4").tobytes()


def undo_quantized(base_payload, encoded, width, step):
    count = len(base_payload) // 4
    return dequantize(base_payload, unzigzag(from_planes(encoded, width, count)), step)


def rescale(base_payload, scales):
    """The base with each of its first axis' slices (a conv's output channel, a Gemm's row) multiplied by its
    scale in float32: the prediction a "scaled" tensor's quantised residual is added to."""
    base = np.frombuffer(base_payload, dtype="<f4").reshape(len(scales), -1)
    return np.multiply(base, scales.astype(np.float32)[:, None], dtype=np.float32).astype("<f4").tobytes()


def undo_scaled(base_payload, encoded, width, step, channels):
    """Lossy, a tensor whose slices were rescaled (BatchNorm folded into a conv whose statistics moved): the
    float32 scales of its `channels` slices, then the residual against the rescaled base, quantised."""
    count = len(base_payload) // 4
    if channels < 1 or count % channels or len(encoded) < 4 * channels:
        raise DeltaError("a scaled tensor's delta does not fit its %d channels" % channels)
    scales = np.frombuffer(encoded, dtype="<f4", count=channels)
    q = unzigzag(from_planes(encoded[4 * channels:], width, count))
    return dequantize(rescale(base_payload, scales), q, step)


def apply_segments(base, segments, body):
    """A binary delta: each segment XORs a run of the base ("x", offset, length) or is new bytes ("r", length)."""
    out, pos = [], 0
    for segment in segments:
        n = segment[-1]
        data = body[pos:pos + n]
        if len(data) != n:
            raise DeltaError("the delta's body is shorter than its segments")
        if segment[0] == "x":
            start = segment[1]
            if start < 0 or start + n > len(base):
                raise DeltaError("a segment reaches outside the base file")
            data = (np.frombuffer(base, np.uint8, n, start) ^ np.frombuffer(data, np.uint8)).tobytes()
        out.append(data)
        pos += n
    return b"".join(out)


# --- rebuilding -------------------------------------------------------------------------------------------

def rebuild(delta, base):
    """The file the delta describes, from the base it was made against; checks both sha256s."""
    header, body = unpack(delta)
    want = header.get("base") or {}
    if sha256_bytes(base) != want.get("sha256"):
        raise DeltaError("the base file is not the one this delta was made against (sha256 %s, the delta "
                         "expects %s)" % (sha256_bytes(base)[:12], str(want.get("sha256"))[:12]), code=3)
    if header.get("kind") == "binary":
        new = apply_segments(base, header["segments"], body)
    elif header.get("kind") == "onnx":
        new = _rebuild_onnx(header, body, base)
    else:
        raise DeltaError("unknown delta kind %r" % header.get("kind"))
    target = header.get("target") or {}
    if sha256_bytes(new) != target.get("sha256"):
        raise DeltaError("the rebuilt file does not match the sha256 the host computed (%s, expected %s)"
                         % (sha256_bytes(new)[:12], str(target.get("sha256"))[:12]), code=4)
    return new


def _rebuild_onnx(header, body, base):
    tensors = onnx_tensors(base)
    frame, holes = skeleton(base, tensors)
    payloads = [base[t.offset:t.offset + t.length] for t in tensors]
    pos = 0
    for index, encoding, size, step, width in header["tensors"]:
        if not 0 <= index < len(tensors):
            raise DeltaError("the delta names tensor %d; the base has %d" % (index, len(tensors)))
        part = body[pos:pos + size]
        pos += size
        if encoding == "diff":
            payloads[index] = undo_difference(payloads[index], part, tensors[index].itemsize)
        elif encoding == "quant":
            payloads[index] = undo_quantized(payloads[index], part, width, step)
        elif encoding == "scaled":
            payloads[index] = undo_scaled(payloads[index], part, width, step, tensors[index].channels)
        else:
            raise DeltaError("unknown tensor encoding %r" % encoding)
    frame_patch = header.get("skeleton")
    if frame_patch is not None:  # the structure changed too (not the tensors' names, types or shapes)
        frame, holes = apply_segments(frame, frame_patch["segments"], body[pos:]), frame_patch["holes"]
    return join(frame, holes, payloads)


# --- the commands -----------------------------------------------------------------------------------------

def write_atomic(path, data):
    temp = "%s.%d.part" % (path, os.getpid())
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def read_manifest(folder):
    """(manifest, problem): the board's manifest when it is readable and of this version."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (OSError, IOError, ValueError) as e:
        return None, "the board's %s is unreadable (%s)" % (MANIFEST_NAME, e)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None, "the board's %s is not an atlas-kd manifest" % MANIFEST_NAME
    if manifest.get("version") != MANIFEST_VERSION:
        return None, "the board's %s is version %s, not %d" % (MANIFEST_NAME, manifest.get("version"),
                                                               MANIFEST_VERSION)
    return manifest, None


def find_atc(name):
    if not name:
        return None
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name)


def probe(args):
    manifest, problem = read_manifest(args.dir)
    files = {}
    for name in MODEL_FILES:
        path = os.path.join(args.dir, name)
        files[name] = sha256_file(path) if os.path.isfile(path) else None
    return {"manifest": manifest, "manifest_problem": problem, "files": files, "codecs": available_codecs(),
            "atc": find_atc(args.atc), "python": "%d.%d.%d" % sys.version_info[:3]}


def apply(args):
    try:
        with open(args.delta, "rb") as f:
            delta = f.read()
        with open(args.base, "rb") as f:
            base = f.read()
    except (OSError, IOError) as e:
        raise DeltaError("cannot read %s: %s" % (e.filename, e.strerror), code=3 if e.filename == args.base else 2)
    new = rebuild(delta, base)
    write_atomic(args.out, new)
    return {"sha256": sha256_bytes(new), "bytes": len(new)}


def tensor_table(path):
    """The manifest's weights: each raw-stored initializer's dtype, dims and sha256, by name."""
    with open(path, "rb") as f:
        data = f.read()
    return {t.name: {"dtype": t.dtype, "dims": t.dims, "sha256": sha256_bytes(data[t.offset:t.offset + t.length])}
            for t in onnx_tensors(data)}


def commit(args):
    """Staged files onto their real names (each rename atomic), checked, then the manifest: safe to repeat."""
    info = json.loads(args.info)
    for name in info["commit"]:
        staged = os.path.join(args.stage, name)
        if os.path.isfile(staged):
            os.replace(staged, os.path.join(args.dir, name))
    files = {}
    for name in info.get("files") or []:  # the other files deploy placed, as the board has them
        path = os.path.join(args.dir, name)
        if os.path.isfile(path):
            files[name] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    for name, expected in sorted(info["expect"].items()):
        path = os.path.join(args.dir, name)
        digest = sha256_file(path) if os.path.isfile(path) else None
        if digest != expected:
            raise DeltaError("the board's %s is not the update's (sha256 %s, expected %s)"
                             % (name, str(digest)[:12], expected[:12]), code=4)
        files[name] = {"sha256": digest, "bytes": os.path.getsize(path)}
    for name in info.get("remove") or []:
        path = os.path.join(args.dir, name)
        if os.path.isfile(path):
            os.remove(path)
    model = dict(info.get("model") or {})
    if ONNX_NAME in info["expect"]:
        model["tensors"] = tensor_table(os.path.join(args.dir, ONNX_NAME))
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "files": files, "model": model,
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(os.path.join(args.dir, MANIFEST_NAME), json.dumps(manifest, sort_keys=True).encode("utf-8"))
    shutil.rmtree(args.stage, ignore_errors=True)
    return manifest


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="delta.py", description="model updates on the board")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("probe", help="what the board holds: its manifest and model files' sha256, as JSON")
    p.add_argument("--dir", required=True)
    p.add_argument("--atc", default="")
    p = sub.add_parser("apply", help="rebuild a model file from its base and a delta")
    p.add_argument("--delta", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("commit", help="move staged files onto their names and write the manifest")
    p.add_argument("--dir", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--info", required=True, help="JSON: commit, expect, files, model, remove (docs/delta.md)")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("give a command: probe, apply or commit")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = {"probe": probe, "apply": apply, "commit": commit}[args.command](args)
    except DeltaError as e:
        print("delta.py: error: %s" % e, file=sys.stderr)
        return e.code
    except (OSError, IOError) as e:
        print("delta.py: error: %s: %s" % (getattr(e, "filename", None) or "", e.strerror or e), file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
