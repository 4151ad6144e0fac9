"""Protocol v1: byte layout, cryptography, cookies and the replay window."""
