"""Type aliases of the public signatures (``py.typed``).

cuhouse takes the arrays of several libraries (NumPy, CuPy) and checks them at
run time, so an array is typed as ``Array``, an alias of ``Any``: the hints
document the signatures without claiming a type no checker can verify.
"""

from typing import Any

Array = Any
"""An array of a supported library: ``numpy.ndarray`` or ``cupy.ndarray``."""
