#!/usr/bin/env python3
"""Huawei's AMCT for ONNX on an fp32 model and a calibration set: the deploy model ATC converts and the fake-quant
model onnxruntime runs. Runs beside the CANN toolkit (Python 3.7, numpy, onnxruntime, amct_onnx); atlas-kd copies
it into <run>/int8/amct/ with the model and the calibration set, and runs it itself where amct_onnx imports.

    python3 amct_calibrate.py --model M.onnx --calibration C.npy --batch 1 --out PREFIX --record R.json [--skip N]

The calls are the 5.x sample's (Ascend/samples 9_amct/amct_onnx resnet-101 calibration): create_quant_config
(batch_num, activation_offset=True: AMCT's defaults otherwise), quantize_model, batch_num forward passes of the
calibration model with AMCT's session options (AMCT_SO: its custom IFMR ops), save_model (PREFIX_deploy_model.onnx,
PREFIX_fake_quant_model.onnx). R.json records what was quantised (sha256 of the model and the calibration set).
"""
import argparse
import hashlib
import json
import os
import sys


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibrate(model, calibration, batch, out, record, skip=(), activation_offset=True):
    """AMCT's PTQ of `model` on the float32 array in `calibration` (whole batches of `batch`)."""
    import numpy as np
    import onnxruntime as ort
    import amct_onnx as amct

    data = np.load(calibration)
    if not len(data) or len(data) % batch:
        raise SystemExit("amct_calibrate: %d calibration samples are not whole batches of %d" % (len(data), batch))
    batch_num = len(data) // batch
    work = os.path.dirname(os.path.abspath(out))
    config = os.path.join(work, "amct_quant_config.json")
    modified = os.path.join(work, "amct_calibration_model.onnx")
    scale_record = os.path.join(work, "amct_scale_offset_record.txt")
    amct.create_quant_config(config_file=config, model_file=model, skip_layers=list(skip), batch_num=batch_num,
                             activation_offset=activation_offset, config_defination=None)
    amct.quantize_model(config_file=config, model_file=model, modified_onnx_file=modified, record_file=scale_record)
    session = ort.InferenceSession(modified, amct.AMCT_SO)  # the calibration model holds AMCT's custom ops
    name = session.get_inputs()[0].name
    for i in range(batch_num):  # save_model is right only after exactly batch_num passes (AMCT manual)
        session.run(None, {name: data[i * batch:(i + 1) * batch]})
    amct.save_model(modified_onnx_file=modified, record_file=scale_record, save_path=out)
    with open(record, "w") as f:
        json.dump({"model_sha256": sha256(model), "calibration_sha256": sha256(calibration), "batch": batch,
                   "batch_num": batch_num, "skip_layers": list(skip), "activation_offset": activation_offset,
                   "amct_version": getattr(amct, "__version__", None)}, f, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--out", required=True, help="AMCT's save_path prefix")
    parser.add_argument("--record", required=True, help="where to write what was quantised (JSON)")
    parser.add_argument("--skip", action="append", default=[], help="a node to keep in float (repeatable)")
    parser.add_argument("--symmetric", action="store_true", help="activations without an offset")
    args = parser.parse_args(argv)
    calibrate(args.model, args.calibration, args.batch, args.out, args.record, args.skip, not args.symmetric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
