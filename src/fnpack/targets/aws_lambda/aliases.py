"""Lambda aliases as the `AliasRouter` of the alias-move protocol: a canary is the alias's
RoutingConfig.AdditionalVersionWeights, and a move is applied only if the alias's RevisionId is still the
one read (Lambda refuses UpdateAlias otherwise, whoever moved it)."""

from __future__ import annotations

from fnpack.errors import ConflictError
from fnpack.targets.aws_lambda.api import LambdaApi, alias_state
from fnpack.targets.aws_lambda.errors import aws_error, error_parts
from fnpack.targets.history import AliasRouter
from fnpack.versions import AliasState


class LambdaRouter(AliasRouter):
    def __init__(self, api: LambdaApi) -> None:
        self.api = api

    def current(self, function: str, alias: str) -> tuple[AliasState | None, tuple[str | None, bool]]:
        """(state, (RevisionId, exists)); state None when it points at $LATEST or does not exist."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            found = self.api.client("lambda").get_alias(FunctionName=function, Name=alias)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and error_parts(exc)[0] == "ResourceNotFoundException":
                return None, (None, False)
            raise aws_error(exc, "lambda", f"reading alias {function}:{alias}") from None
        return alias_state(found), (found.get("RevisionId"), True)

    def apply(self, function: str, alias: str, state: AliasState, revision: tuple[str | None, bool]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        revision_id, exists = revision
        weights = {str(state.canary): state.weight} if state.canary is not None else {}
        arguments = {"FunctionName": function, "Name": alias, "FunctionVersion": str(state.primary),
                     "RoutingConfig": {"AdditionalVersionWeights": weights}}
        try:
            if not exists:
                self.api.client("lambda").create_alias(**arguments)
            else:  # Lambda refuses it when the alias changed since it was read
                self.api.client("lambda").update_alias(**arguments, **({"RevisionId": revision_id} if revision_id
                                                                       else {}))
        except (ClientError, BotoCoreError) as exc:
            code = error_parts(exc)[0] if isinstance(exc, ClientError) else ""
            if code in ("PreconditionFailedException", "ResourceConflictException"):
                raise ConflictError(f"{function}:{alias} was moved by someone else since it was read (its RevisionId "
                                    "changed); it was left as it was",
                                    hint=f"see `fnpack alias list {function}` and try again") from None
            raise aws_error(exc, "lambda", f"moving {function}:{alias}") from None

