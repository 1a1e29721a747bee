"""Plain-PyTorch grouped residual vector quantization (GRVQ): the definition the Triton kernels are checked against.

Contract (DESIGN.md): ``x [N, D]``, ``codebooks [G, R, K, D // G]``. The D features split into G contiguous
groups; each group runs R residual stages, and stage r picks the codeword of ``codebooks[g, r]`` nearest (squared
L2) to what the earlier stages left over. Encoding returns ``(codes int64 [N, G, R], quantized [N, D])``; decoding
sums the chosen codewords back into ``[N, D]``.

Nearest is decided on ``|c|^2 - 2 <r, c>``: ``|r|^2`` is the same for every codeword of a stage, and adding it
before the comparison would only round nearby scores together. Ties go to the lowest code index. Both references
compute in the inputs' dtype (the eager baseline a user would write) and return the quantized vectors in x's dtype.
"""
from __future__ import annotations

import torch


def check_grvq_shapes(x: torch.Tensor, codebooks: torch.Tensor) -> None:
    """Raise one clear error when ``x`` and ``codebooks`` do not fit the GRVQ contract."""
    if x.dim() != 2:
        raise ValueError(f"grvq: x must be [N, D], got shape {tuple(x.shape)}: flatten the leading dims first")
    if codebooks.dim() != 4:
        raise ValueError(f"grvq: codebooks must be [G, R, K, D // G], got shape {tuple(codebooks.shape)}")
    groups, _, _, group_dim = codebooks.shape
    if groups * group_dim != x.shape[1]:
        raise ValueError(f"grvq: x has D={x.shape[1]} features but codebooks [G={groups}, R, K, {group_dim}] cover "
                         f"{groups * group_dim}: make D equal G * (D // G)")
    if codebooks.shape[2] == 0:
        # nothing to choose from: the kernel would read codeword 0 past the end of the codebooks
        raise ValueError(f"grvq: codebooks {tuple(codebooks.shape)} hold K=0 codewords per stage: give each stage at "
                         "least one")
    if x.device != codebooks.device:
        raise ValueError(f"grvq: x is on {x.device} but codebooks on {codebooks.device}: move them to one device")


def check_codes(codes: torch.Tensor, codebooks: torch.Tensor) -> None:
    """Raise one clear error when ``codes`` is not ``[N, G, R]`` integers matching ``codebooks``."""
    groups, stages = codebooks.shape[:2]
    if codes.dim() != 3 or tuple(codes.shape[1:]) != (groups, stages):
        raise ValueError(f"grvq: codes must be [N, G={groups}, R={stages}], got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"grvq: codes must be an integer tensor, got {codes.dtype}")
    if codes.device != codebooks.device:
        raise ValueError(f"grvq: codes are on {codes.device} but codebooks on {codebooks.device}: move them to one "
                         "device")


def grvq_encode_reference(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [N, D]``, ``codebooks [G, R, K, D // G]`` -> ``(codes int64 [N, G, R], quantized [N, D])``."""
    check_grvq_shapes(x, codebooks)
    groups, stages, _, group_dim = codebooks.shape
    n = x.shape[0]
    dtype = torch.promote_types(x.dtype, codebooks.dtype)
    book = codebooks.to(dtype)
    norms = book.pow(2).sum(dim=-1)                                        # [G, R, K]
    residual = x.to(dtype).view(n, groups, group_dim).transpose(0, 1)       # [G, N, Dg]
    quantized = torch.zeros_like(residual)
    codes = torch.empty(groups, n, stages, dtype=torch.int64, device=x.device)
    for stage in range(stages):
        stage_book = book[:, stage]                                          # [G, K, Dg]
        scores = torch.baddbmm(norms[:, stage, None, :], residual, stage_book.transpose(1, 2), alpha=-2.0)
        # torch.argmin returns the first minimal index: the lowest code wins a tie.
        idx = scores.argmin(dim=-1)                                          # [G, N]
        chosen = torch.gather(stage_book, 1, idx[..., None].expand(-1, -1, group_dim))
        residual = residual - chosen
        quantized = quantized + chosen
        codes[:, :, stage] = idx
    return codes.transpose(0, 1).contiguous(), quantized.transpose(0, 1).reshape(n, -1).to(x.dtype)


def grvq_decode_reference(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """``codes [N, G, R]`` -> quantized ``[N, D]`` in the codebooks' dtype: the sum of each group's codewords."""
    check_codes(codes, codebooks)
    groups, stages, size, group_dim = codebooks.shape
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
        raise ValueError(f"grvq: codes must lie in [0, {size}), got [{int(codes.min())}, {int(codes.max())}]")
    out = torch.zeros(codes.shape[0], groups, group_dim, dtype=codebooks.dtype, device=codebooks.device)
    group_index = torch.arange(groups, device=codebooks.device)[None, :]
    # Stage by stage, in the order encoding accumulated them, so decode(encode(x)) repeats its sums exactly.
    for stage in range(stages):
        out = out + codebooks[:, stage][group_index, codes[:, :, stage].long()]
    return out.view(codes.shape[0], -1)
