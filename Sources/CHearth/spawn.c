#include "hearth_spawn.h"
