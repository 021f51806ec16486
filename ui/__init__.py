"""The app's handlers, one module per tab, importable and testable without a server.

``app.py`` declares the screen and wires these; each handler takes plain values (paths,
numbers, the cached ``Case``) and returns what the components show. Bad input becomes
``gr.Error`` here, never deeper down.
"""
