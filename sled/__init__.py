"""SLED over MQTT: the command line, shared runtime pieces (transport, logging) and the demo.

Importing ``sled`` or ``runtime.transport`` never imports torch: the edge node uses them.
"""

__version__ = "0.1.0"
