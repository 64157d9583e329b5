"""The Ray Serve application serving a marker-trained model (see serving/app.py)."""
