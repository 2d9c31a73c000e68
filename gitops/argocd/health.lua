-- Argo CD health check for lora.ablation.dev/LoraAblation: conditions -> Healthy / Progressing /
-- Degraded / Suspended, with the trial progress in the message ("7/12 trials done").
local hs = {}
local function condition(status, kind)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then return c end
  end
  return nil
end

local status = obj.status
local progress = (status ~= nil and status.progress) or "0/?"
local done = progress .. " trials done"
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Spec changed; waiting for the operator (" .. done .. ")"
  return hs
end
local suspended = condition(status, "Suspended")
if suspended ~= nil and suspended.status == "True" then
  hs.status = "Suspended"
  hs.message = "Suspended: " .. done
  return hs
end
local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or done
  return hs
end
if ready ~= nil and (ready.reason == "InvalidSpec" or ready.reason == "Forbidden" or ready.reason == "PreflightFailed"
    or ready.reason == "TooManyFailedTrials") then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. (ready.message or "")
  return hs
end
hs.status = "Progressing"
hs.message = done
return hs
