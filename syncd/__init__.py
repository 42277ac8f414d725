"""syncd: the identity map and delivery daemon between GetCourse and Salebot."""

__version__ = "0.1.0"
