-- deidflow: who may do what over Orthanc's HTTP API (REST and DICOMweb).
--
-- Loaded through "LuaScripts", locally (deidflow.local.orthanc) and in the cloud (the task writes
-- this text from the template, whose copy tests/unit/test_orthanc_template.py keeps identical).
-- Orthanc calls IncomingHttpRequestFilter after authentication, with the authenticated user, and
-- answers 403 when it returns false. Default deny: a user in no list can do nothing.
--
--   Senders   store only: POST /instances, POST <DicomWebRoot>studies[/<Study UID>] (STOW-RS). No
--             GET of anything: no read-back of originals over REST, WADO-RS, WADO-URI or QIDO-RS.
--   Monitors  GET of exactly the paths in MonitorPaths (the health probe: /system, /changes).
--   Readers   GET only (a local reference Orthanc in tests; the cloud has none).
--
-- The configuration section (values are user names and paths, never secrets):
--   "DeidflowHttpFilter": {"Senders": [...], "Monitors": [...], "MonitorPaths": [...],
--                          "Readers": [...], "DicomWebRoot": "/dicom-web/"}
-- Paths are compared exactly (Orthanc passes the path without its query string), so "/instances/",
-- "//instances" or an encoded variant is refused rather than interpreted.

local section = GetOrthancConfiguration()["DeidflowHttpFilter"] or {}

local function set_of(list)
  local set = {}
  for _, value in ipairs(list or {}) do
    set[value] = true
  end
  return set
end

local senders = set_of(section["Senders"])
local monitors = set_of(section["Monitors"])
local monitor_paths = set_of(section["MonitorPaths"])
local readers = set_of(section["Readers"])
local stow = (section["DicomWebRoot"] or "/dicom-web/") .. "studies"
local stow_study = stow .. "/"

local function is_uid(text)
  return #text > 0 and #text <= 64 and string.match(text, "^[0-9.]+$") ~= nil
end

local function stores(method, uri)
  if method ~= "POST" then
    return false
  end
  if uri == "/instances" or uri == stow then
    return true
  end
  return string.sub(uri, 1, #stow_study) == stow_study and is_uid(string.sub(uri, #stow_study + 1))
end

function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if username == nil or username == "" then
    return false
  end
  if senders[username] then
    return stores(method, uri)
  end
  if monitors[username] then
    return method == "GET" and monitor_paths[uri] == true
  end
  if readers[username] then
    return method == "GET"
  end
  return false
end
