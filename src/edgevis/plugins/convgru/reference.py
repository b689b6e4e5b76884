"""ConvGRU cell: the PyTorch reference (ground truth for every other form of the op).

Cell (SEEDS.md, recurrent SeqFormer encoder)::

    zr  = conv_zr([x, h])                 # (B, 2C, H, W): z pre-activations, then r
    z, r = sigmoid(zr[:, :C]), sigmoid(zr[:, C:])
    n   = tanh(conv_n([x, r * h]))        # r gates h *before* the candidate conv
    h'  = (1 - z) * h + z * n

Because ``r * h`` feeds a conv, no single pointwise op can cover the whole cell. edgevis splits it as
(our design, documented in the package docstring):

- reset gating ``r * h``: plain ops (Slice, Sigmoid, Mul) in every form; TensorRT's own pointwise
  fusion handles them, and a plugin boundary there would only add a kernel launch;
- the state update ``h' = (1 - sigmoid(zr[:, :C])) * h + sigmoid(zr[:, :C]) * tanh(n_pre)``: the
  fused op ``edgevis::convgru_update(zr_pre, n_pre, h)`` (TensorRT plugin ``ConvGRUCell``). It reads
  the z half of ``zr_pre`` in place (no Slice) and keeps ``h`` in FP32 even when the convs run FP16.

The module is stateless: ``forward(x, h) -> h'``; ``forward_sequence`` runs the same weights over a
clip, so streaming single frames equals one clip call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgevis.errors import EdgevisError

STATE_DTYPE = torch.float32


def _shape(t: Tensor) -> list[int]:
    """``t``'s sizes for messages; symbolic sizes (torch.export) stay symbolic: ``int()`` would pin them."""
    return [s if isinstance(s, torch.SymInt) else int(s) for s in t.shape]


def _same(got: list, want: list) -> bool:
    """``got == want`` elementwise without specialising symbolic sizes.

    A pair with a symbolic side is recorded with ``torch._check`` (a runtime assertion in the exported
    program, or an immediate error when it is provably false) instead of being evaluated to a Python
    bool, which would guard the exported graph on the example's size (e.g. fix the batch "B" to 2).
    """
    if len(got) != len(want):
        return False
    same = True
    for g, w in zip(got, want):
        if isinstance(g, torch.SymInt) or isinstance(w, torch.SymInt):
            torch._check(g == w, lambda g=g, w=w: f"ConvGRUCell: size {g} must equal {w}")
        else:
            same = same and g == w
    return same


def gru_update_reference(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> Tensor:
    """``(1 - z) * h + z * tanh(n_pre)`` with ``z = sigmoid(zr_pre[:, :C])``, computed in ``h``'s dtype.

    zr_pre: (B, 2C, H, W) gate pre-activations [z, r]; n_pre, h: (B, C, H, W). Activations may be
    FP16 while ``h`` is FP32 (mixed-precision state); the math then runs in FP32. Made only of ops
    that export to standard ONNX, so this is also the ``portable`` ONNX form.
    """
    c = h.shape[1]
    math_dtype = torch.promote_types(h.dtype, torch.float32)
    z = torch.sigmoid(zr_pre[:, :c].to(math_dtype))  # (B, C, H, W)
    n = torch.tanh(n_pre.to(math_dtype))  # (B, C, H, W)
    hf = h.to(math_dtype)
    return ((1.0 - z) * hf + z * n).to(h.dtype)


def reset_gate(zr_pre: Tensor, h: Tensor) -> Tensor:
    """``sigmoid(zr_pre[:, C:]) * h`` in ``h``'s dtype: the input of the candidate conv (plain ops)."""
    c = h.shape[1]
    r = torch.sigmoid(zr_pre[:, c:].to(h.dtype))  # (B, C, H, W)
    return r * h


def _make_conv(cin: int, cout: int, kernel: int, separable: bool) -> nn.Module:
    pad = kernel // 2
    if not separable:
        return nn.Conv2d(cin, cout, kernel, padding=pad)
    # light variant: depthwise kxk on the concatenation, then pointwise 1x1
    return nn.Sequential(
        nn.Conv2d(cin, cin, kernel, padding=pad, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1),
    )


class ConvGRUCell(nn.Module):
    """Stateless ConvGRU cell: ``forward(x, h) -> h'`` with the hidden state passed explicitly.

    Args:
        in_ch: channels of ``x``.
        hid_ch: channels of the hidden state ``h``.
        kernel: odd conv kernel size (3 by default).
        separable: depthwise-separable convs (the light variant the recurrent encoder uses).
        fused: route the state update through ``edgevis::convgru_update`` (True) or through the
            plain reference ops (False); both give the same numbers, the flag exists for parity tests.

    Precision: ``x`` has the dtype of the weights. ``h`` is FP32 (``init_hidden``); with FP16 weights
    and an FP32 ``h`` the convs run FP16 while the state stays FP32. An FP16 ``h`` with FP16 weights
    runs everything in FP16 (only for drift studies: a long stream drifts).
    """

    def __init__(self, in_ch: int, hid_ch: int, kernel: int = 3, separable: bool = False, fused: bool = True) -> None:
        super().__init__()
        if in_ch < 1 or hid_ch < 1:
            raise EdgevisError(f"ConvGRUCell: in_ch={in_ch}, hid_ch={hid_ch}; both must be >= 1")
        if kernel < 1 or kernel % 2 == 0:
            raise EdgevisError(f"ConvGRUCell: kernel={kernel}; expected an odd size (1, 3, 5...) so H, W are kept")
        self.in_ch, self.hid_ch, self.kernel, self.separable, self.fused = in_ch, hid_ch, kernel, separable, fused
        self.conv_zr = _make_conv(in_ch + hid_ch, 2 * hid_ch, kernel, separable)
        self.conv_n = _make_conv(in_ch + hid_ch, hid_ch, kernel, separable)

    def extra_repr(self) -> str:
        return f"in_ch={self.in_ch}, hid_ch={self.hid_ch}, kernel={self.kernel}, separable={self.separable}"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def init_hidden(self, x: Tensor) -> Tensor:
        """Zero state for a frame (B, C, H, W) or a clip (B, T, C, H, W) ``x``: (B, hid_ch, H, W) FP32."""
        if not isinstance(x, Tensor) or x.dim() not in (4, 5):
            got = _shape(x) if isinstance(x, Tensor) else type(x).__name__
            raise EdgevisError(f"ConvGRUCell.init_hidden: received x {got}; expected (B, C, H, W) or (B, T, C, H, W)")
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        return torch.zeros(b, self.hid_ch, h, w, dtype=STATE_DTYPE, device=x.device)  # (B, hid, H, W)

    def check_inputs(self, x: Tensor, h: Tensor) -> None:
        """Raise :class:`EdgevisError` naming both shapes/dtypes when ``x`` and ``h`` do not fit the cell."""
        if not isinstance(x, Tensor) or not isinstance(h, Tensor):
            raise EdgevisError(
                f"ConvGRUCell: received x {type(x).__name__}, h {type(h).__name__}; expected two tensors"
            )
        xs, hs = _shape(x), _shape(h)
        if x.dim() != 4 or not _same(xs[1:2], [self.in_ch]):
            raise EdgevisError(
                f"ConvGRUCell: x has shape {xs}, expected (B, {self.in_ch}, H, W); "
                f"for a clip (B, T, C, H, W) call forward_sequence"
            )
        if x.dtype != self.dtype:
            raise EdgevisError(
                f"ConvGRUCell: x dtype {x.dtype} but the weights are {self.dtype}; "
                f"convert with x.to({self.dtype}) or cell.to({x.dtype})"
            )
        want = [xs[0], self.hid_ch, xs[2], xs[3]]
        if h.dim() != 4 or not _same(hs, want):
            if h.dim() == 4 and not _same(hs[2:], xs[2:]):
                why = f"x/h spatial mismatch: x is {xs[2]}x{xs[3]}, h is {hs[2]}x{hs[3]}"
            else:
                why = "wrong hidden-state shape"
            raise EdgevisError(
                f"ConvGRUCell: {why}; h has shape {hs} but x has shape {xs}, so h must be {want} "
                f"(B, hid_ch, H, W); build it with cell.init_hidden(x) (reset the stream if the frame size changed)"
            )
        if h.dtype not in (STATE_DTYPE, self.dtype):
            raise EdgevisError(
                f"ConvGRUCell: h dtype {h.dtype} (shape {hs}) is not supported with x {x.dtype} (shape {xs}); "
                f"expected {STATE_DTYPE} (the hidden state stays FP32); build it with cell.init_hidden(x)"
            )

    def step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One frame: returns ``(h', h_act)``: the new state (``h``'s dtype) and a copy in ``x``'s dtype
        for the next layer (the same tensor when the dtypes agree)."""
        self.check_inputs(x, h)
        from edgevis.plugins.convgru.op import convgru_update, convgru_update_fp16

        act = x.dtype
        zr_pre = self.conv_zr(torch.cat([x, h.to(act)], dim=1))  # (B, 2C, H, W)
        rh = reset_gate(zr_pre, h).to(act)  # (B, C, H, W)
        n_pre = self.conv_n(torch.cat([x, rh], dim=1))  # (B, C, H, W)
        mixed = act == torch.float16 and h.dtype == STATE_DTYPE
        if not self.fused:
            h_new = gru_update_reference(zr_pre, n_pre, h)
            return h_new, h_new.to(act)
        if mixed:
            return convgru_update_fp16(zr_pre, n_pre, h)
        h_new = convgru_update(zr_pre, n_pre, h)
        return h_new, h_new.to(act)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """x: (B, in_ch, H, W), h: (B, hid_ch, H, W) -> h': (B, hid_ch, H, W) in ``h``'s dtype."""
        return self.step(x, h)[0]

    def forward_sequence(self, x_seq: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        """x_seq: (B, T, in_ch, H, W), h0: (B, hid_ch, H, W) -> (outputs (B, T, hid_ch, H, W), h_T).

        Runs the single-frame path T times with the same weights, so streaming equals the clip call.
        """
        if not isinstance(x_seq, Tensor) or x_seq.dim() != 5:
            got = _shape(x_seq) if isinstance(x_seq, Tensor) else type(x_seq).__name__
            raise EdgevisError(
                f"ConvGRUCell.forward_sequence: x_seq {got}; expected (B, T, {self.in_ch}, H, W); "
                "for one frame call forward(x, h)"
            )
        h = h0
        outs = []
        for t in range(x_seq.shape[1]):
            h = self.forward(x_seq[:, t], h)
            outs.append(h)
        return torch.stack(outs, dim=1), h  # (B, T, hid, H, W), (B, hid, H, W)
