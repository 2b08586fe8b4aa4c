"""Figure scripts (``load_data`` -> ``make_figure``) and the report that gathers them."""

__all__: list[str] = []
