# Distributed integration tests (comm area): two "hosts" as network namespaces, and a rank killed
# or stopped mid-training. Scripts exit 77 (skip) where namespaces cannot be made (not root, no
# iproute2).
set(_comm_int ${CMAKE_CURRENT_SOURCE_DIR})
set(_worker $<TARGET_FILE:ddp_test_worker>)

add_test(NAME comm_two_hosts COMMAND ${_comm_int}/two_hosts_test.sh ${_worker} ${MPIEXEC_EXECUTABLE})
add_test(NAME comm_kill_rank COMMAND ${_comm_int}/kill_rank.sh ${_worker} ${MPIEXEC_EXECUTABLE} kill 10)
add_test(NAME comm_stuck_rank COMMAND ${_comm_int}/kill_rank.sh ${_worker} ${MPIEXEC_EXECUTABLE} stop 10)
add_test(NAME comm_two_hosts_kill_rank COMMAND ${_comm_int}/kill_rank.sh ${_worker} ${MPIEXEC_EXECUTABLE} kill 10 two-hosts)
add_test(NAME comm_two_hosts_stuck_rank COMMAND ${_comm_int}/kill_rank.sh ${_worker} ${MPIEXEC_EXECUTABLE} stop 10 two-hosts)
# The link between the two hosts goes down: nobody dies, nobody can talk; the timeout ends every rank.
add_test(NAME comm_two_hosts_partition COMMAND ${_comm_int}/kill_rank.sh ${_worker} ${MPIEXEC_EXECUTABLE} partition 10 two-hosts)
# The same with inline MPI progress (the path taken when MPI_THREAD_MULTIPLE is not granted).
add_test(NAME comm_stuck_rank_inline COMMAND ${_comm_int}/kill_rank.sh ${_worker} ${MPIEXEC_EXECUTABLE} stop 10)
set_tests_properties(comm_stuck_rank_inline PROPERTIES ENVIRONMENT DDP_MPI_PROGRESS_THREAD=0)
set_tests_properties(comm_two_hosts comm_kill_rank comm_stuck_rank comm_two_hosts_kill_rank comm_two_hosts_stuck_rank
  comm_stuck_rank_inline comm_two_hosts_partition PROPERTIES LABELS "comm;integration" SKIP_RETURN_CODE 77 TIMEOUT 180)
