"""The typed configuration every process reads: the supervisor loads it, each actor gets it
at start. Both sides import it; it imports nothing of theirs but the error types.

    schema.py    one frozen dataclass per section, defaults and bounds
    loader.py    YAML and the environment -> Config; errors name the key by its path
    secrets.py   values from the environment, never printed
    webhooks.py  the one parser of Discord webhook URLs
"""

from catalyst_config.loader import (ENV_CONFIG, check_secrets, config_from_dict,
                                    config_warnings, default_config_path, load_config)
from catalyst_config.schema import (ActorKindConfig, ActorsConfig, AlertsConfig, ChartsConfig,
                                    Config, DedupeConfig, EndpointsConfig, FeedConfig,
                                    FetchConfig, LeakConfig, LLMConfig, ModelPrice,
                                    RestartConfig, SinkConfig, SqliteConfig, SupervisorConfig)
from catalyst_config.secrets import Secrets
from catalyst_config.webhooks import parse_webhook_url

__all__ = ["ENV_CONFIG", "ActorKindConfig", "ActorsConfig", "AlertsConfig", "ChartsConfig",
           "Config", "DedupeConfig", "EndpointsConfig", "FeedConfig", "FetchConfig",
           "LLMConfig", "LeakConfig", "ModelPrice", "RestartConfig", "Secrets", "SinkConfig",
           "SqliteConfig", "SupervisorConfig", "check_secrets", "config_from_dict",
           "config_warnings", "default_config_path", "load_config", "parse_webhook_url"]
