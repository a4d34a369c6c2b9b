@echo off
rem Easel launcher for Windows. Double-click, or run: launch.bat [flags for launch.py]
rem First run: makes a Python environment in .venv next to this file and installs Easel into it
rem (the CUDA build of torch when an NVIDIA GPU is present, the CPU build otherwise).
setlocal
cd /d "%~dp0"
if "%EASEL_CUDA_TORCH_INDEX%"=="" set EASEL_CUDA_TORCH_INDEX=https://download.pytorch.org/whl/cu128

where py >nul 2>nul && (set PY=py -3) || (set PY=python)
%PY% -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>nul
if errorlevel 1 (
  echo Easel could not start: Python 3.10 or newer is needed. Install it from https://www.python.org/downloads/ ^(tick "Add python.exe to PATH"^) and run this again.
  pause
  exit /b 1
)

if not exist .venv\Scripts\python.exe (
  echo Easel: first run: creating a Python environment in .venv...
  %PY% -m venv .venv || goto :failed
)

if exist .venv\.easel-installed goto :run
.venv\Scripts\python.exe -c "import torch, torchvision" >nul 2>nul
if not errorlevel 1 goto :packages
nvidia-smi -L >nul 2>nul
if errorlevel 1 (
  echo Easel: no NVIDIA GPU found: installing the CPU build of PyTorch...
  .venv\Scripts\python.exe -m pip install --quiet "torch>=2.4,<2.15" "torchvision>=0.19,<0.30" || goto :failed
) else (
  echo Easel: NVIDIA GPU found: installing PyTorch with CUDA ^(a large download, once^)...
  .venv\Scripts\python.exe -m pip install --quiet "torch>=2.4,<2.15" "torchvision>=0.19,<0.30" --index-url %EASEL_CUDA_TORCH_INDEX% || goto :failed
)
:packages
echo Easel: installing Easel's packages...
.venv\Scripts\python.exe -m pip install --quiet -e . || goto :failed
echo installed> .venv\.easel-installed

:run
.venv\Scripts\python.exe launch.py %*
exit /b %errorlevel%

:failed
echo Easel could not start: installing failed. Check your internet connection and run launch.bat again.
pause
exit /b 1
