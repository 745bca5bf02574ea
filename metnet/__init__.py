"""MetNet precipitation nowcasting: archive, model, forecasts, verification and export."""

__version__ = "0.1.0"
