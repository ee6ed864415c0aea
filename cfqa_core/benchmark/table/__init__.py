"""The CFQA benchmark table: per row, a rate point's metrics and ground-truth damage (``cfqa dataset build``)."""
