// Launchers of the kernels in emu_test_kernels.cu (for test_emu_runtime.cpp). Each launches one block
// of `threads` threads on the legacy stream; a launch error is cudaGetLastError()'s.
#pragma once

namespace ddp::emu_test {

// p[i] = v, by a kernel declared __launch_bounds__(128).
void launch_bounded_fill(int threads, int* p, int v);
// p[i] = -v, by a templated kernel declared __launch_bounds__(128, 2), launched as k<int, true>.
void launch_bounded_fill_negated(int threads, int* p, int v);
// p[i] = v, by a kernel without launch bounds.
void launch_unbounded_fill(int threads, int* p, int v);

}  // namespace ddp::emu_test
