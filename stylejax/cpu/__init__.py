"""CPU speed work behind one seam: Winograd convolutions, XLA CPU options, host memory."""
