"""`sparsetrt serve`: an OpenAI-compatible completions server over any backend.

  app           FastAPI routes, limits, errors, SSE, logs (create_app, serve)
  worker        the model thread and its bounded queue (GenerationWorker, Job)
  scheduler     continuous batching on that thread (BatchScheduler, BatchLimits)
  errors        ServeError: an HTTP status with OpenAI's error fields
  served_model  what --model names, resolved before the server binds (ServedModel)
  metrics       Prometheus metrics of the server (ServeMetrics)
  loadtest      concurrent clients against a running server (`sparsetrt loadtest`)
  process       a server as a child process: free port, start, wait until ready, SIGTERM
"""
