"""Parity: a candidate runner against the PyTorch reference on the same windows and prompts.

  compare    run_parity (the `sparsetrt parity` stage), tolerances, candidates, the greedy-generation check
  quantized  a quantized file against its references (the quantize stage runs it while it holds the model)
  metrics    the logit metrics (max/mean |Δ|, cosine, top-k, KL, perplexity), accumulated window by window
  report     parity.html for people, JUnit XML for CI
"""
