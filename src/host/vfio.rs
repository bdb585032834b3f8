//! A real Gen8/Gen9 iGPU through VFIO (placeholder until the backend lands in this change).
