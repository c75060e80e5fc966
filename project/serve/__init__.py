"""The prediction service: a LitServe API (``POST /predict``, ``GET /health``, ``GET /info``) and a web page."""
