"""Adaptive sparsity: per request, a controller picks one variant of a model (dense, 2:4, 2:4+INT8, ...).

  variant_set   the variants and what each costs on this backend (`sparsetrt variants`, variants.json)
  features      what the cheap probe variant's prefill says about a request (NLL, entropy, length)
  controllers   LinUCB, Thompson, threshold and static policies with persisted state
  router        AdaptiveRunner: the controller's choice behind the ordinary runner interface (serve --adaptive)
"""
