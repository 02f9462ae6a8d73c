"""The compute core: layers, the model and its flat parameter arena, losses, initializers, optimizers, schedules
and counter-based random draws. Pure NumPy: nothing here imports MPI or opens a file."""
