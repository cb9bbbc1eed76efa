"""The shared runtime, one floor above the wire contract and below the nodes.

Floors (each imports only the floors below it; ``tests/test_layering.py`` enforces it)::

    sled (CLI, app client, demo) · bench          top floor
    edge_node · verifier_node                    nodes (never import each other)
    runtime (transport, config loading, logs,     this package
             Mosquitto process, model folders)
    schemas (wire records, codec, topics)         the contract
"""
