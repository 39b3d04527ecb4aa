"""Export stage: ONNX that ATC accepts, simplified, linted, with an onnxruntime reference."""
