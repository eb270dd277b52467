"""Exact torch stand-ins for the two flash-attention kernels transformers calls, installed where
transformers keeps its lazily imported kernels, so its REAL flash-attention dispatch runs on CPU.

Not a test module: used by test_flash_packing.py and test_gpu_check.py. Everything around the kernels is
transformers' own code (``integrations/flash_attention.py``, ``_flash_attention_forward``: its padded,
varlen-kwargs, position-ids and plain branches).
"""

from __future__ import annotations

import inspect

import torch


def _sdpa(q, k, v, causal, scale):
    """[S, H, D] x [S, Hkv, D] -> [S, H, D], grouped-query like flash attention."""
    q, k, v = (x.transpose(0, 1) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
    return out.transpose(0, 1)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, deterministic=False):
    """[B, S, H, D]: each row one sequence."""
    assert dropout_p == 0.0 and window_size == (-1, -1)
    return torch.stack([_sdpa(q[b], k[b], v[b], causal, softmax_scale) for b in range(q.shape[0])])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, deterministic=False):
    """[total, H, D]: the sequences cut at ``cu_seqlens``, each attending only to itself."""
    assert dropout_p == 0.0 and window_size == (-1, -1) and torch.equal(cu_seqlens_q, cu_seqlens_k)
    bounds = cu_seqlens_q.tolist()
    assert bounds[0] == 0 and bounds[-1] == q.shape[0]
    assert int(max_seqlen_q) == max(b - a for a, b in zip(bounds, bounds[1:]))
    return torch.cat([_sdpa(q[a:b], k[a:b], v[a:b], causal, softmax_scale) for a, b in zip(bounds, bounds[1:])])


def install(monkeypatch) -> dict[str, int]:
    """Put the stand-ins where transformers keeps its flash kernels, as if flash_attn were installed and
    already imported; returns call counters ``{"flash", "varlen"}``."""
    import transformers.modeling_flash_attention_utils as fa

    calls = {"flash": 0, "varlen": 0}

    def counted(fn, key):
        def wrapper(*a, **kw):
            calls[key] += 1
            return fn(*a, **kw)

        wrapper.__signature__ = inspect.signature(fn)  # transformers reads the kernel's parameters
        return wrapper

    varlen = counted(flash_attn_varlen_func, "varlen")
    monkeypatch.setattr(fa, "_loaded_implementation", "flash_attention_2")
    monkeypatch.setattr(fa, "_flash_fn", counted(flash_attn_func, "flash"))
    monkeypatch.setattr(fa, "_flash_varlen_fn", varlen)
    monkeypatch.setattr(fa, "_flash_with_kvcache_fn", None)
    monkeypatch.setattr(fa, "_pad_fn", fa._pad_input)
    monkeypatch.setattr(fa, "_unpad_fn", fa._unpad_input)
    monkeypatch.setattr(fa, "_process_flash_kwargs_fn", fa._lazy_define_process_function(varlen))
    monkeypatch.setattr(fa, "_process_with_kvcache_kwargs_fn", dict)
    return calls
