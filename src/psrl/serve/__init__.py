"""Reward server (FastAPI) and its ``remote`` reward client."""
