from halod.receivers.otlp.factory import FACTORY

__all__ = ["FACTORY"]
