"""The local web app (``agetool serve``, extra ``agetool[ui]``): Gradio on top of the Python API.

``studio`` holds what the app does without the web, ``app`` the page and its named endpoints,
``server`` starting and stopping it. Gradio is imported only when a server is built.
"""
