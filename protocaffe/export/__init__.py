"""Leaving protocaffe: a lowered net as a torch.export program (`.pt2`) or an ONNX model.

`program.export_program` traces the CaffeModule with torch.export (batch, and height/width
where the net allows, left dynamic); `onnx.save_onnx` converts that program with torch's ONNX
exporter and `onnx.check_onnx` runs it in onnxruntime against protocaffe's own output.
Imported only by the `export` command: torch and onnx load on first use.
"""
