"""The benchmark tools that speed figures rest on: the binary peak reads the popcount the CPU
really got, and the int8 peer is a real static per-channel quantisation calibrated on real images."""
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, shared
from tbnn.binarize import preset
from tbnn.export.onnx import onnx_bytes
from tbnn.models import build_model

sys.path.insert(0, str(REPO / "benchmarks"))


def test_binary_peak_names_the_popcount_this_cpu_has():
    import binary_peak
    from common import isa

    got = binary_peak.peak(1, tries=2)
    assert got["binary_macs_per_s"] > 1e9
    instr = binary_peak.popcount_instruction()
    assert instr.startswith("VPOPCNTQ") == ("avx512_vpopcntdq" in isa()), instr


def test_int8_peer_is_static_per_channel_qdq_calibrated_on_real_images():
    import onnx
    import onnxruntime as ort
    import peers

    images = peers.calibration_images(shared("cifar10_jpeg"), n=64)
    assert len(np.unique(images.mean((1, 2, 3)).numpy().round(3))) > 50  # distinct real images
    torch.manual_seed(0)
    fp = build_model("vgg_small", num_classes=10, width=0.25, binarize=preset("none")).eval()
    fp_onnx = onnx_bytes(fp, (3, 32, 32))
    int8 = peers.quantised_int8(fp_onnx, images)
    graph = onnx.load_from_string(int8).graph
    ops = [n.op_type for n in graph.node]
    fp_ops = [n.op_type for n in onnx.load_from_string(fp_onnx).graph.node]
    # every BatchNorm right after a conv is folded into it; the two after a max-pool cannot be
    assert ops.count("BatchNormalization") == fp_ops.count("BatchNormalization") == 2
    assert ops.count("QuantizeLinear") >= 5
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear"
                   and n.input[1] in scales and scales[n.input[1]].size > 1]
    assert len(per_channel) >= 7  # every conv and linear weight has a scale per output channel
    sess = ort.InferenceSession(int8, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": images.numpy()})[0]
    with torch.no_grad():
        ref = fp(images).numpy()
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95  # quantised, not broken


def test_peers_refuses_a_folder_without_images(tmp_path):
    import peers

    with pytest.raises(SystemExit, match="int8 calibration needs real ones"):
        peers.calibration_images(tmp_path)
