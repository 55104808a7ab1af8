import CHearth
import Glibc

func hearthPipe2(_ fds: inout [Int32]) -> Int32 {
    hearth_pipe2(&fds, O_CLOEXEC)
}
