"""Protocol definitions the host side speaks (ttrpc, containerd's shim v2
API): our own .proto files, with the field numbers and package names of the
published protocols, and the code generate.py makes from them."""
