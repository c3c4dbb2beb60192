"""The app layer on the shipped model: predict (``python -m app.predict``) and the try-it server
(``python -m app.serve``). The DVC stages are in ``stages/``, which never imports this package."""
