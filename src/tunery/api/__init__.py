"""`tunery api`: an OpenAI-compatible HTTP API over the shared inference engine.

``protocol`` holds the wire format (pydantic), ``messages`` maps OpenAI
messages and tools onto Tunery's conversation shape, ``stops`` cuts replies at
stop strings, ``app`` builds the FastAPI application and ``server`` runs it with
uvicorn. FastAPI, uvicorn and sse-starlette come with ``pip install 'tunery[api]'``;
nothing here is imported by the rest of Tunery.
"""
