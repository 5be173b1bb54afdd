from halod.receivers.phoenix.factory import FACTORY

__all__ = ["FACTORY"]
