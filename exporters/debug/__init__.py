from halod.exporters.debug.factory import FACTORY

__all__ = ["FACTORY"]
