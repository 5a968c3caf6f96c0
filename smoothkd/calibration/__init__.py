"""Teacher calibration: streamed metrics (ECE, adaptive ECE, Brier, NLL), reliability diagram, the gate."""
