"""The one door to the fast paths: the optional C kernels and the fused CPU code around them."""
