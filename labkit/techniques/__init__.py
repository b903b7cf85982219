"""labkit.techniques: one technique family a module, each a function that rewrites a model or runs it.

quant (+ quant_onednn) INT8/INT4 quantization, prune, parallel (TP/PP/DP over torch.distributed), kernels
(attention backends, prepacked linears), memory (peak memory, KV-cache bytes, int8 cache), decode (batch-1 static
KV-cache decoding, eager or compiled). A technique module never imports another technique module; the lessons
and the case study compose them. Imports only from core.
"""
