# The default coder-mesh template: a workspace on the coordinator's own host.
#
# Only Terraform's built-in provider is used (terraform_data with local-exec),
# so it works on a machine without network access. The workspace is a folder
# (coder_mesh_local_dir) with a home inside it, and the agent is a background
# process started on start and stopped on stop and delete. agent.sh does the
# process handling; see README.md.

terraform {
  # plantimestamp()
  required_version = ">= 1.5"
}

variable "coder_mesh_url" {
  type        = string
  description = "The coordinator's access URL, handed to the agent as CODER_MESH_URL."
}

variable "coder_mesh_agent_token" {
  type        = string
  sensitive   = true
  description = "The token the agent authenticates with (CODER_MESH_AGENT_TOKEN)."
}

variable "coder_mesh_agent_command" {
  type        = string
  description = "A shell command that runs the agent in the foreground on this host."
}

variable "coder_mesh_start_count" {
  type        = number
  description = "1 when the workspace should run, else 0."

  validation {
    condition     = contains([0, 1], var.coder_mesh_start_count)
    error_message = "coder_mesh_start_count must be 0 or 1."
  }
}

variable "coder_mesh_local_dir" {
  type        = string
  description = "An absolute folder on this host reserved for the workspace; deleted with it."

  validation {
    condition     = startswith(var.coder_mesh_local_dir, "/") && trimsuffix(var.coder_mesh_local_dir, "/") != ""
    error_message = "coder_mesh_local_dir must be an absolute folder other than /."
  }
}

locals {
  dir = trimsuffix(var.coder_mesh_local_dir, "/")
}

# The workspace folder, with the agent's home in it. Only `terraform destroy`
# (deleting the workspace) removes it; stopping keeps it.
resource "terraform_data" "home" {
  input = { dir = local.dir }

  provisioner "local-exec" {
    working_dir = path.module
    command     = "sh ./agent.sh prepare"
    environment = { CODER_MESH_AGENT_DIR = self.input.dir }
  }

  # Stops the agent as well, in case its own resource was tainted (Terraform
  # skips the destroy provisioners of a tainted resource).
  provisioner "local-exec" {
    when        = destroy
    working_dir = path.module
    command     = "sh ./agent.sh remove"
    environment = { CODER_MESH_AGENT_DIR = self.input.dir }
  }
}

# The running agent: exists while the workspace should run.
resource "terraform_data" "agent" {
  count      = var.coder_mesh_start_count
  depends_on = [terraform_data.home]

  input = { dir = local.dir }

  # Every start build starts the agent afresh, with the current command and
  # token, even when Terraform believes one is running (it may have died with
  # the host).
  triggers_replace = plantimestamp()

  # The token travels in the environment only: not on a command line (ps would
  # show it) and not in the state. Because it is sensitive, Terraform hides
  # this step's output; the "check" step below reports instead.
  provisioner "local-exec" {
    working_dir = path.module
    command     = "sh ./agent.sh start"
    environment = {
      CODER_MESH_AGENT_DIR     = local.dir
      CODER_MESH_AGENT_COMMAND = var.coder_mesh_agent_command
      CODER_MESH_URL           = var.coder_mesh_url
      CODER_MESH_AGENT_TOKEN   = var.coder_mesh_agent_token
    }
  }

  provisioner "local-exec" {
    working_dir = path.module
    command     = "sh ./agent.sh check"
    environment = { CODER_MESH_AGENT_DIR = local.dir }
  }

  provisioner "local-exec" {
    when        = destroy
    working_dir = path.module
    command     = "sh ./agent.sh stop"
    environment = { CODER_MESH_AGENT_DIR = self.input.dir }
  }
}

# The startup script: the agent runs it once per start, in the workspace's
# home with the user's shell, once the start build has ended. Its output is
# the agent log (`coder-mesh logs NAME`); a non-zero exit is a start error
# that `coder-mesh show NAME` displays. The coordinator reads these two
# outputs from the build's state.
variable "startup_script" {
  type        = string
  default     = "echo \"workspace started on $(uname -n) in $PWD\""
  description = "Shell commands the agent runs once per start (a parameter: --parameter startup_script=...)."
}

variable "startup_script_timeout" {
  type        = number
  default     = 0
  description = "Seconds the startup script may run before it is stopped (start_timeout); 0 for no limit."

  validation {
    condition     = var.startup_script_timeout >= 0
    error_message = "startup_script_timeout must be 0 or more seconds."
  }
}

output "coder_mesh_startup_script" {
  value = var.startup_script
}

output "coder_mesh_startup_script_timeout" {
  value = var.startup_script_timeout
}
