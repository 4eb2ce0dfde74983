"""Small apps that show cachewise in FastAPI, Flask and Django (tests/test_examples.py)."""
