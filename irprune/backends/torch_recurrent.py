"""ONNX's LSTM in torch, differentiable, for the gradient criteria and fine-tuning (CRNN text
recognizers such as ddddocr's end in a bidirectional LSTM).

With gates in ONNX's order (i, o, f, c), W [D, 4H, I], R [D, 4H, H], B = [Wb, Rb] [D, 8H] and
peepholes P = [Pi, Po, Pf] [D, 3H], per direction and step t:

    i = sigmoid(x W_i^T + h R_i^T + P_i * c_prev + Wb_i + Rb_i)
    f = sigmoid(x W_f^T + h R_f^T + P_f * c_prev + Wb_f + Rb_f)
    g = tanh(x W_c^T + h R_c^T + Wb_c + Rb_c)
    c = f * c_prev + i * g
    o = sigmoid(x W_o^T + h R_o^T + P_o * c + Wb_o + Rb_o)
    h = o * tanh(c)

Outputs: Y [T, D, N, H], Y_h and Y_c [D, N, H]. The reverse direction runs t = T-1 .. 0.
Supported: the default activations (Sigmoid, Tanh, Tanh), no ``clip``, ``input_forget`` 0,
``layout`` 0 (onnxruntime runs no other, so nothing could check it), and every sequence at full
length; anything else raises ``UnsupportedOpError`` naming it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from irprune.backends.torch_call import Args, Call, Out, arg, opt

_DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")


def lstm(call: Call, a: Args) -> Out:
    _check(call, a)
    x, w, r = arg(a, 0), arg(a, 1), arg(a, 2)  # x: [T, N, I]
    dirs, hidden = w.shape[0], w.shape[1] // 4
    steps, batch = x.shape[0], x.shape[1]
    bias, peep = opt(a, 3), opt(a, 7)
    h0, c0 = opt(a, 5), opt(a, 6)
    zeros = x.new_zeros(batch, hidden)
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = _direction(call) == "reverse" or d == 1
        p = None if peep is None else peep[d]
        h = zeros if h0 is None else h0[d]
        c = zeros if c0 is None else c0[d]
        # the input's share of the gates for every step at once: one product, not T (and one
        # select of w[d], r[d] per direction: a select's backward writes a zero tensor the size
        # of its source, once per use)
        xw = x @ w[d].T
        if bias is not None:
            xw = xw + (bias[d, : 4 * hidden] + bias[d, 4 * hidden :])
        rt = r[d].T
        inputs = xw.unbind(0)
        out = [zeros] * steps
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            h, c = _step(inputs[t], h, c, rt, p, hidden)
            out[t] = h
        ys.append(torch.stack(out))  # [T, N, H]
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, dim=1)  # [T, D, N, H]
    y_h, y_c = torch.stack(hs), torch.stack(cs)  # [D, N, H]
    return (y, y_h, y_c)[: call.n_outputs]


def _step(
    xw: Tensor, h: Tensor, c: Tensor, rt: Tensor, p: Tensor | None, hidden: int
) -> tuple[Tensor, Tensor]:
    """One step from the input's gate share ``xw`` (x W^T + Wb + Rb) and R^T."""
    gates = xw + h @ rt
    i, o, f, g = gates.split(hidden, dim=-1)
    if p is not None:
        pi, po, pf = p.split(hidden)
        i, f = i + pi * c, f + pf * c
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if p is not None:
        o = o + po * c
    return torch.sigmoid(o) * torch.tanh(c), c


def _direction(call: Call) -> str:
    return call.text("direction", "forward")


def _check(call: Call, a: Args) -> None:
    acts = call.attr("activations")
    if acts is not None:
        names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in acts)
        if names not in (_DEFAULT_ACTIVATIONS, _DEFAULT_ACTIVATIONS * 2):
            raise call.unsupported(f"activations {list(names)}")
    if call.attr("clip") is not None:
        raise call.unsupported("clip")
    if int(call.attr("input_forget", 0)):
        raise call.unsupported("input_forget")
    if int(call.attr("layout", 0)):
        raise call.unsupported("layout 1")
    lens = opt(a, 4)
    steps = arg(a, 0).shape[0]
    if lens is not None and bool((lens != steps).any()):
        raise call.unsupported("sequences shorter than the input")
