/* Umbrella header of the CHearth module. */
#include "hearth_spawn.h"
#include "hearth_fs.h"
#include "hearth_sys.h"
#include "hearth_bpf.h"
#include "hearth_netns.h"
