"""One module per generation mode; each turns a request into a result stream.

* :mod:`edge_node.modes.sled`: draft here, verify on the verifier (the SLED loop).
* :mod:`edge_node.modes.local`: the drafter alone; every chunk ``verified=False``.
* :mod:`edge_node.modes.centralized`: the verifier generates every token.

Each is ``async def run(node, stream, req, prompt_ids)`` yielding ``ResultChunk`` …
``ResultFinal``; :mod:`edge_node.modes.base` says what a mode needs from the node.
"""
