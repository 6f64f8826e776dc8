"""A user layer for `--plugin`: ShiftedReLU, y = max(x, 0) + shift, with its own parameter."""

import torch

import protocaffe
from protocaffe.proto.schema import Field, declare_message

declare_message(
    "ShiftedReLUParameter", Field("shift", 1, "float", default=0.0), param="shifted_relu_param"
)


@protocaffe.layer("ShiftedReLU")
class ShiftedReLU:
    param_field = "shifted_relu_param"
    in_place = True

    def shapes(self, ctx):  # Caffe's Reshape: bottom shapes -> top shapes
        return [ctx.bottoms[0]]

    def lower(self, ctx):  # torch.fx nodes for the tops
        y = ctx.call(torch.relu, ctx.inputs[0])
        return [ctx.call(torch.add, y, ctx.param.shift)]
