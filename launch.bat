@echo off
rem Easel launcher for Windows: double-click it, or run: launch.bat [options]   (launch.bat --help lists them)
rem It finds a Python that Easel can use and hands over to bootstrap.py, which does the rest, the same
rem as for launch.sh: the .venv with the PyTorch build for this computer, the install log
rem (logs\install.log), the record of what is installed, then Easel itself.
rem On failure the window stays open so the message can be read.
setlocal
cd /d "%~dp0"

rem Preferred first; bootstrap.py --check-python has the final word on each (it knows the supported range).
rem PYTHON_CMD keeps the command itself, not a path read back from Python: a path with letters such
rem as "e acute" would not survive the trip through the console's code page.
set "PYTHON_CMD="
if defined EASEL_PYTHON call :try_python "%EASEL_PYTHON%"
if not defined PYTHON_CMD call :try_python py -3.11
if not defined PYTHON_CMD call :try_python py -3.12
if not defined PYTHON_CMD call :try_python py -3.13
if not defined PYTHON_CMD call :try_python py -3.14
if not defined PYTHON_CMD call :try_python python
if not defined PYTHON_CMD goto :no_python

%PYTHON_CMD% bootstrap.py %*
if errorlevel 1 goto :failed
exit /b 0

:try_python
%* bootstrap.py --check-python >nul 2>nul
if not errorlevel 1 set PYTHON_CMD=%*
exit /b 0

:no_python
echo.
echo Easel needs Python 3.11, 3.12, 3.13 or 3.14, and this computer does not have one.
echo.
echo Install Python 3.12 from https://www.python.org/downloads/windows/
echo and tick "Add python.exe to PATH" in the installer. Or, in a terminal:
echo     winget install -e --id Python.Python.3.12
echo Then double-click launch.bat again.
echo.
echo If Python is installed somewhere else, say where: set EASEL_PYTHON=C:\path\to\python.exe
echo.
pause
exit /b 1

:failed
echo.
echo Easel stopped with an error: the message above says what to do.
if exist "%~dp0logs\install.log" echo The install log is "%~dp0logs\install.log"
pause
exit /b 1
